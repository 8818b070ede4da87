"""Specs: pydantic models for every knob (`run`: agent, training, dataset; `tuning`: the tuning job)
and the published methods' presets (`presets`). Shared by every layer; imports only `rlservice.errors`."""
