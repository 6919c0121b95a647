"""Both ends of the gateway ↔ 北方云 link: wire models, signing, the gateway agent and the
reference cloud."""

__all__: list[str] = []
