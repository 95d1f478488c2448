"""Model cards and Hub publishing: `card.write_card`, `push.push`, `python -m gatedgpt2.hub_cards card|push`."""
