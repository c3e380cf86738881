"""Placeholder: the event fan-out (being written)."""


class EventHub:
    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url

    def connections(self) -> dict:
        return {"clients": [], "monitors": []}
