"""The API server, webhook service and monitor (Flask, flask-sock, Flower)."""
