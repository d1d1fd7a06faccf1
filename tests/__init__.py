"""The collection's tests; ``tests.support`` is the library they share with bench/ and demo/ (see pytest.ini)."""
