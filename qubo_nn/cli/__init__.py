"""The ``qubo-nn`` command line: thin click commands over the library."""
