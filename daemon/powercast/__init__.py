"""powercast: power and temperature announcements over IP multicast, and the controllers
that turn them into fan and load-shedding decisions."""

__version__ = "0.1.0"
