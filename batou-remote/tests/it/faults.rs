//! Faults: unknown and changed host keys, unreachable hosts, held locks, killed agents.
