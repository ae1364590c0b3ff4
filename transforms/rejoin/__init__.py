"""Reading a run's outputs back and putting them next to the instances they are for."""
