"""Reports: a search's tables (`search`), the arms' comparison (`arms`), a sweep's summary (`sweep`) and
the pictures of all of them (`plots`)."""
