"""Energy: presets of cited constants (`presets`), the compiled network and its baselines
priced on its counted workload (`pricing`), the report (`report`) and its chart (`chart`).
``kirinc report`` is the command; ``docs/energy.md`` has every formula."""
