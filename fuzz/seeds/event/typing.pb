conversation.typing_on‚
conversation:42"	