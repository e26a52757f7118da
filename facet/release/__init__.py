"""The shipped model set from a data folder in one command (`facet build-set --from-data`):
:mod:`.plan` checks the folder, writes the training manifests and says which `facet train` and
`facet export` commands run; :mod:`.sets` writes the benchmark sets the set is chosen and scored
on; :mod:`.notes` is the card's text on the data. Training runs as `facet train` subprocesses."""
