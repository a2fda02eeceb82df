"""The unified login service: one domain account, any site (handler -> manager -> action)."""
