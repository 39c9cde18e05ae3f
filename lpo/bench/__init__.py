"""`lpo bench`: the whole study on the embedded world (runner, config) and its report."""
