"""The application on top of the library: training and attack jobs with their run folders, the
paper's protocol, its report and latency measurement. The CLI calls these; the library never
imports them."""
