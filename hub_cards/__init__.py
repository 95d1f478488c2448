"""Model cards and Hub publishing: `card.write_card`, `push.push`, `python -m hub_cards card|push`."""
