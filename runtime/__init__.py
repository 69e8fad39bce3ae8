"""The lean runtime: exported engines, a bounded GPU-resident memory bank, top-k readout
and the motion-aware save rule. Imports neither timm nor any training dependency."""
