#!/bin/bash
# i-Mix N-pair vs its unmixed baseline at two training fractions of CIFAR-10, 3 seeds, equal steps (100).
export CL_DATA_ROOT=/work/shared/data OMP_NUM_THREADS=2
COMMON=(experiment=imix_table loss=imix encoder=pami_cnn "encoder.projector=[512,128]" optimizer=adam
        "~optimizer.momentum" optimizer.weight_decay=0 schedule.warmup_epochs=0 seed=0,1,2 hydra/launcher=basic)
/work/main/.venv/bin/cl-run -m "${COMMON[@]}" dataset.train_fraction=0.01 epochs=50 hydra.sweep.dir=fraction_0.01_50epochs > fraction_0.01.log 2>&1
/work/main/.venv/bin/cl-run -m "${COMMON[@]}" dataset.train_fraction=0.05 epochs=10 hydra.sweep.dir=fraction_0.05_10epochs > fraction_0.05.log 2>&1

