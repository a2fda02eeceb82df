"""The native two-site lab: real Asterisk 22 sites in network namespaces, without Docker.

``ccdr lab up`` builds (once, cached outside the repo) a Debian sid chroot with
Asterisk, gives each site its own network namespace and address on a private
bridge, renders a baseline configuration, and starts PostgreSQL and Redis where
they are not already running.  Faults (kill, freeze, cut, ...) act on those
processes and links so tests and drills can break a site for real.
"""
