"""Authentication methods, one module per method, each with its server and client side."""
