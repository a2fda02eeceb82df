"""ccdr agent client library: what a desktop or softphone imports to be an agent.

``agent_client.sip`` is a small SIP user agent stack (one UDP socket shared by many
phone lines) and a phone fleet used by the fleet simulator and benchmarks.
"""
