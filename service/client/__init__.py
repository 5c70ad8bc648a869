"""Bulk scoring against a running service over HTTP (``python -m service.client score``, ``realnvp-score``).

It talks to the service only through its HTTP API (httpx) and imports nothing of the server's code, so it can
run on any machine that reaches the service.
"""
