"""Language instructions for the Meta-World v3 tasks.

The demo corpus (:mod:`hlrp.sim.demo_videos`) pairs every rendered video with one short
imperative English instruction, the text a vision-language model is conditioned on. The
table covers all 50 tasks that Meta-World 3 ships a scripted expert policy for
(``metaworld.policies.ENV_POLICY_MAP``). It is plain data, so importing this module does not
import MuJoCo or Meta-World.
"""

from __future__ import annotations

#: Task name -> instruction, for every Meta-World v3 task with a scripted expert policy.
INSTRUCTIONS: dict[str, str] = {
    "assembly-v3": "put the ring onto the peg",
    "basketball-v3": "dunk the ball into the basket",
    "bin-picking-v3": "move the cube from one bin into the other",
    "box-close-v3": "put the lid on the box",
    "button-press-topdown-v3": "press the button from the top",
    "button-press-topdown-wall-v3": "press the button from the top behind the wall",
    "button-press-v3": "press the button from the front",
    "button-press-wall-v3": "reach around the wall and press the button",
    "coffee-button-v3": "press the button on the coffee machine",
    "coffee-pull-v3": "pull the mug away from the coffee machine",
    "coffee-push-v3": "push the mug under the coffee machine",
    "dial-turn-v3": "turn the dial",
    "disassemble-v3": "pick the ring off the peg",
    "door-close-v3": "close the door",
    "door-lock-v3": "lock the door by turning the lock",
    "door-open-v3": "open the door",
    "door-unlock-v3": "unlock the door by turning the lock",
    "drawer-close-v3": "close the drawer",
    "drawer-open-v3": "open the drawer",
    "faucet-close-v3": "turn the faucet handle to close the faucet",
    "faucet-open-v3": "turn the faucet handle to open the faucet",
    "hammer-v3": "hammer the nail into the wall",
    "hand-insert-v3": "insert the gripper into the hole",
    "handle-press-side-v3": "press the handle down from the side",
    "handle-press-v3": "press the handle down",
    "handle-pull-v3": "pull the handle up",
    "handle-pull-side-v3": "pull the handle up from the side",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "lever-pull-v3": "pull the lever up",
    "peg-unplug-side-v3": "unplug the peg from the side",
    "pick-out-of-hole-v3": "pick the object out of the hole",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "pick-place-wall-v3": "pick up the puck and place it behind the wall",
    "plate-slide-back-side-v3": "slide the plate sideways back into the cabinet",
    "plate-slide-back-v3": "slide the plate back into the cabinet",
    "plate-slide-side-v3": "slide the plate sideways into the goal",
    "plate-slide-v3": "slide the plate into the goal",
    "reach-v3": "reach the goal position",
    "reach-wall-v3": "reach over the wall to the goal position",
    "push-back-v3": "push the puck back to the goal",
    "push-v3": "push the puck to the goal",
    "push-wall-v3": "push the puck around the wall to the goal",
    "shelf-place-v3": "place the puck on the shelf",
    "soccer-v3": "kick the ball into the goal",
    "stick-pull-v3": "grab the stick and pull the box with it",
    "stick-push-v3": "grab the stick and push the box with it",
    "sweep-into-v3": "sweep the puck into the hole",
    "sweep-v3": "sweep the puck off the table",
    "window-close-v3": "close the window",
    "window-open-v3": "open the window",
}


def known_tasks() -> list[str]:
    """All task names that have an instruction, sorted."""
    return sorted(INSTRUCTIONS)


def instruction_for(task: str) -> str:
    """The instruction for ``task``; a :class:`KeyError` naming the task for unknown tasks."""
    try:
        return INSTRUCTIONS[task]
    except KeyError:
        raise KeyError(
            f"no instruction for task {task!r}; known tasks: {', '.join(known_tasks())}"
        ) from None
