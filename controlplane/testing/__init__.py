"""Protocol-accurate fake PBX servers and trace replay, for tests and `ccdr lab replay`.

Never imported by the runtime. Unlike ``panoramisk.testing``, nothing here
changes any global state.
"""
