"""The reporting layer: leaderboards (text, markdown, HTML), a run's report figure and results as data frames.
It reads finished result files and imports the layers below it."""
