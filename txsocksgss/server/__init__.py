"""The SOCKS server: protocol, relay, commands, rules, configuration and service."""
