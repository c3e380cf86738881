"""Placeholder: filled in by the REST API work."""

from flask import Blueprint

blueprint = Blueprint("jobs", __name__)
