"""cdrwatch: fair-use and fraud detection and re-billing on streams of CDRs and SIP registrations."""

__version__ = "0.1.0"
