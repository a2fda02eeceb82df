"""The inventory: sites, systems, skill groups and their queues, agents, devices and
their lines per site, the virtual agent ID pool and planned-switch rules, in PostgreSQL."""
