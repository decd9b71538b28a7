"""Events shared by every service: one bus interface, in-process and Redis Streams backends,
and a transactional outbox that feeds the bus from committed SQLite transactions."""

from runtime.events.bus import Event, EventBus, Handler, Subscription

__all__ = ["Event", "EventBus", "Handler", "Subscription"]
