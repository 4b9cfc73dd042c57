"""The client side: Deferred-based SOCKS 4/4a/5 endpoints, BIND, UDP ASSOCIATE, and the command line."""
