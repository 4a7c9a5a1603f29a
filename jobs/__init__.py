"""Jobs, the quarterly schedule and the Definitions of the flywheel's code location."""
