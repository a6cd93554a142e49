
	contact:9blocked