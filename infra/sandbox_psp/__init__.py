"""A sandbox PSP: an HTTP server that speaks the BCB "API Pix" shapes the platform uses, for development, the demo
and tests. Not a PSP: state is in memory, nothing leaves this machine, and it can be told to be slow, failing or down.

Run one with ``python -m infra.sandbox_psp --psp-id primary --port 8701 --admin-port 8711`` (``--help`` lists every
knob); ``razao up`` runs two, primary and secondary (``infra.sandbox_psp.services``). See ``docs/pix.md``.
"""
