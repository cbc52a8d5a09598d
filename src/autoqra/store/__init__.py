"""Infrastructure that the method runs on: the record store, content fingerprints, worker liveness."""
