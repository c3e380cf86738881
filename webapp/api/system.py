"""Placeholder: filled in by the REST API work."""

from flask import Blueprint

blueprint = Blueprint("system", __name__)
