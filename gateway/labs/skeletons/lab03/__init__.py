"""Lab 3: see your own traffic. The student's file is ``answers.toml`` (docs/labs/03-capture.md)."""
