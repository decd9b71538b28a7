from tests.doubles.consul_fixtures import consul

__all__ = ["consul"]
