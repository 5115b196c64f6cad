"""A simulated fleet: many Comms Hubs, each with simulated HAN devices, against one DCC
(`hanota fleet plan|register|sim`). `plan`: the identities, derived from numbers;
`device`: the simulated devices and their in-process HAN; `sim`: running a slice in one or
more processes."""
