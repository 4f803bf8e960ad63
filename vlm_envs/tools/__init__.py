"""Tools for people: the commands of ``python -m vlm_envs`` besides ``evaluate``.

* :mod:`vlm_envs.tools.play`: ``play``, an env in a pygame window, typed answers through the model's parser
  (``pip install "vlm-envs[human]"``);
* :mod:`vlm_envs.tools.gallery`: ``make_gallery``, one PNG frame of every registered env.

The command line itself stays ``vlm_envs/__main__.py``.
"""
