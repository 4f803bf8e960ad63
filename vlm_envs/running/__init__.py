"""Running envs: the text-action wrapper, the episode loop for any text generator, vector envs over workers.

* :mod:`vlm_envs.running.wrappers`: ``TextActions``, the env taking the model's raw text as its action;
* :mod:`vlm_envs.running.agent_loop`: ``run_agent(envs, generate)``, and ``step_infos``, a
  finished step's own info in a vector env's infos (every loop reads it there);
* :mod:`vlm_envs.running.actor_vector`: ``ActorVectorEnv``, a ``VectorEnv`` over env workers in a pool;
* :mod:`vlm_envs.running.ray_pool`: ``make_ray_vec``, that pool on Ray actors (``pip install "vlm-envs[ray]"``).

Importing it imports only gymnasium, numpy and pillow.
"""

from vlm_envs.running.actor_vector import ActorVectorEnv, EnvWorker, ThreadWorkers
from vlm_envs.running.agent_loop import Turn, run_agent, step_infos
from vlm_envs.running.ray_pool import RayVectorEnv, make_ray_vec
from vlm_envs.running.wrappers import TextActions

__all__ = ["ActorVectorEnv", "EnvWorker", "RayVectorEnv", "TextActions", "ThreadWorkers", "Turn", "make_ray_vec", "run_agent", "step_infos"]
