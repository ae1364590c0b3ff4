"""Reading and decoding each input format: byte ranges of files, chunks of raw records, the arrays a signature takes."""
