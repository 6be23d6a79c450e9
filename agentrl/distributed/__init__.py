"""``run.backend: ray``: rollout, env and learner work as Ray actors.

    driver (agentrl/train.py, unchanged loop)
      RayRollout  ── EpisodeSpecs, one call per episode ──>  EnvWorker x ray.env_workers
                   <── Trajectories (failed ones when a worker dies)   │ AgentLoop over its env
                                                                       │ instances; a RemoteEngine
                                                                       v forwards each turn to
                   ── weights (ObjectRef, version) ──────────>  GenerationWorker x ray.generation_workers
                                                                  (HFEngine / VLLMEngine / OpenAIEngine)
      LearnerGroup ── TrainBatch (ObjectRef) ──>  LearnerRank x ray.learner_ranks
                   <── metrics + new weights      (Learner; FSDP2 over ranks when more than one)

The driver keeps a CPU copy of the policy (the "mirror") that the learner group refreshes after
every update; train.py checkpoints it and hands it to ``RayRollout.sync_weights`` exactly as in
local mode. See docs/distributed.md.
"""
