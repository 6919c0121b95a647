"""Features built on the hub: alerts, voice, TV menu, automations, commerce, provisioning."""

__all__: list[str] = []
