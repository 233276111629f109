#!/bin/bash
# SimCLR's Table 4 (experiment=simclr_loss_table) and the six cells of its Table 5 (experiment=simclr_temperature)
# at a CPU scale: 5% of CIFAR-10 (2500 images, stratified and seeded), the study's CNN with a 512-128 head, Adam
# 1e-3 with one warm-up epoch of the cosine schedule, batch 256, 10 epochs (100 steps), 3 seeds, one job at a time.
export CL_DATA_ROOT=/work/shared/data OMP_NUM_THREADS=2
SCALE=(encoder=pami_cnn "encoder.projector=[512,128]" optimizer=adam optimizer.lr=1e-3 schedule.warmup_epochs=1
       dataset.train_fraction=0.05 epochs=10 batch_size=256 "eval.protocols=[standard]" seed=0,1,2
       hydra/launcher=basic)
CL_RUN=/work/main/.venv/bin/cl-run
$CL_RUN -m experiment=simclr_loss_table "${SCALE[@]}" hydra.sweep.dir=loss_table > loss_table.log 2>&1
$CL_RUN -m experiment=simclr_temperature "${SCALE[@]}" loss.similarity=cosine loss.temperature=0.05,0.1,0.5,1 \
  hydra.sweep.dir=temperature > temperature.log 2>&1
$CL_RUN -m experiment=simclr_temperature "${SCALE[@]}" loss.similarity=dot loss.temperature=10,100 \
  hydra.sweep.dir=temperature >> temperature.log 2>&1
