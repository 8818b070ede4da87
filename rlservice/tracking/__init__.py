"""Everything MLflow: the store and its connection (`store`), runs (`runs`, and `tuning_runs` for a
tuning job's parent and trial runs), the registry (`registry`), the pyfunc model, export and figures.
Builds on `training`, `agent` and `data`; knows nothing of Ray."""
