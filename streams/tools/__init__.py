"""The offline tools around the worker: the embedded broker (whose end-offset fix a worker on it
uses), replays, the bundled and the generated labelled months and their scoring, the importers of
switch CDRs, the monthly summary file, the customer's statement and the benchmark."""
