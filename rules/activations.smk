# Filled in by the stage's owner; see the module docstring of the library function it calls.
