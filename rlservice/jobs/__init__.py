"""The jobs that drive Ray workers, in one place: the tuning driver (`tune`, with `tune_dataset`),
offline-to-online fine-tuning (`finetune`) and the dataset factory with its behaviour agent
(`dataset_factory`, `behaviour_agent`). Above `runtime` and `tracking`; only the CLI is above them."""
