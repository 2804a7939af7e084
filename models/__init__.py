"""Pydantic messages and config, and the SQLModel tables of the store. No I/O happens here."""
