"""Clinical and lab inputs: readers with clear, file-and-row errors."""
