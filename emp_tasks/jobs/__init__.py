"""Built-in job types; each module registers one task on the EMP app."""
