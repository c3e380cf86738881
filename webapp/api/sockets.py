"""Placeholder: WebSocket routes (being written)."""


def init_app(app) -> None:  # noqa: ANN001
    pass
